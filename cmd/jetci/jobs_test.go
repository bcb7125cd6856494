package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/reporter"
)

// TestUpJobSecretsEnvironmentAndLimits runs a pipeline that asks for a secret,
// prints its environment and goes over a memory limit, under jetci up: the
// secret shows as *** in the stored log, on the job page and in the error,
// nothing of jetci's own environment reaches the steps, and the limit ends
// the job with an error naming it.
func TestUpJobSecretsEnvironmentAndLimits(t *testing.T) {
	const secret = "e2e-Secret-Value-42"
	t.Setenv("NATS_PASSWORD", "planted-nats-password")
	t.Setenv("JETCI_ADMIN_TOKEN", "planted-admin-token")
	t.Setenv("GOFLAGS_FOR_JOBS", "passed")
	file := filepath.Join(t.TempDir(), "deploy-token")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The job checks the value by its hash: the sandboxed job cannot read
	// the runner's secret file (nor should it).
	sum := sha256.Sum256([]byte(secret))
	secretSum := hex.EncodeToString(sum[:])
	repo := newGitRepo(t)
	pipeline := `jobs:
  deploy:
    steps:
      - env
      - echo "deploying with $DEPLOY_TOKEN"
      - 'test "$(printf %s "$DEPLOY_TOKEN" | sha256sum | cut -c1-64)" = ` + secretSum + ` || exit 1'
    secrets: [DEPLOY_TOKEN]
  hog:
    steps: ["python3 -c 'b = [bytearray(8 << 20) for _ in range(100)]'"]
    limits: {memory: 32MiB, processes: 50}
`
	c := repo.Commit("deploy", map[string]string{".jetci.yml": pipeline})
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--secret", "DEPLOY_TOKEN@proj:main=file:" + file, "--pass-env", "GOFLAGS_FOR_JOBS"}, repo.Dir)
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	var recs []reporter.Record
	brokertest.CheckFor(t, time.Minute, 50*time.Millisecond, func() error {
		all, err := read()
		if err != nil {
			return err
		}
		recs = recs[:0]
		for _, r := range all {
			if r.Commit == c && (r.Status == "passed" || r.Status == "failed" || r.Status == "error") {
				recs = append(recs, r)
			}
		}
		if len(recs) != 2 {
			return fmt.Errorf("%d of 2 jobs finished", len(recs))
		}
		return nil
	})
	get := func(path string) string {
		resp, err := http.Get(web + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for _, r := range recs {
		log := get("/api/v1/jobs/" + r.JobID + "/log")
		switch r.Job {
		case "deploy":
			page := get("/job/" + r.JobID)
			if r.Status != "passed" || !strings.Contains(log, "deploying with ***") || !strings.Contains(log, "DEPLOY_TOKEN=***") ||
				!strings.Contains(log, "GOFLAGS_FOR_JOBS=passed") || !strings.Contains(page, "deploying with ***") {
				t.Errorf("deploy %+v; log:\n%s", r, log)
			}
			for _, bad := range []string{secret, "planted", "NATS_PASSWORD", "JETCI_ADMIN_TOKEN"} {
				if strings.Contains(log, bad) || strings.Contains(page, bad) {
					t.Errorf("%q in the log or on the page:\n%s", bad, log)
				}
			}
		case "hog":
			if r.Status != "failed" || !strings.Contains(r.Error, "memory limit of 32MiB exceeded") || !strings.Contains(log, "[jetci] limits: memory 32MiB, processes 50") {
				t.Errorf("hog %+v; log:\n%s", r, log)
			}
		default:
			t.Errorf("record %+v", r)
		}
	}
}
