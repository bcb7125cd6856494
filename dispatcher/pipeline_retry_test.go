package dispatcher

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// The reports: and retry: keys: per job, retry also at the top level (a job's
// own value wins), and bad values quoted with their line.
func TestPipelineReportsAndRetry(t *testing.T) {
	src := "retry: 1\njobs:\n  unit:\n    steps: go test ./...\n    reports: [\"out/**/*.xml\", junit.xml]\n" +
		"  lint:\n    steps: go vet ./...\n    retry: 0\n  e2e:\n    steps: x\n    reports: r.xml\n    retry: 2\n"
	pl, err := ParsePipeline(".jetci.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		reports []string
		retry   int
	}{
		"unit": {[]string{"out/**/*.xml", "junit.xml"}, 1},
		"lint": {nil, 0},
		"e2e":  {[]string{"r.xml"}, 2},
	}
	for _, j := range pl.Jobs {
		w := want[j.Name]
		if !slices.Equal(j.Reports, w.reports) || j.Retry != w.retry {
			t.Errorf("job %s: reports %q retry %d, want %q %d", j.Name, j.Reports, j.Retry, w.reports, w.retry)
		}
	}
	pl, err = ParsePipeline(".jetci.yml", []byte("jobs:\n  t:\n    steps: x\n"))
	if err != nil || pl.Jobs[0].Retry != 0 || pl.Jobs[0].Reports != nil {
		t.Fatalf("defaults: %+v, %v", pl, err)
	}

	bad := []struct {
		name, src string
		line      int
		reason    string
	}{
		{"retry too high", "jobs:\n  t:\n    steps: x\n    retry: 4\n", 4, "want a number from 0 to 3"},
		{"retry negative", "retry: -1\njobs:\n  t:\n    steps: x\n", 1, "want a number from 0 to 3"},
		{"retry a string", "jobs:\n  t:\n    steps: x\n    retry: once\n", 4, "retry of job \"t\""},
		{"retry quoted", "jobs:\n  t:\n    steps: x\n    retry: \"1\"\n", 4, "want a number"},
		{"retry a list", "jobs:\n  t:\n    steps: x\n    retry: [1]\n", 4, "want a number"},
		{"reports empty", "jobs:\n  t:\n    steps: x\n    reports: []\n", 0, ""},
		{"reports a map", "jobs:\n  t:\n    steps: x\n    reports: {a: b}\n", 4, "reports of job"},
		{"reports empty entry", "jobs:\n  t:\n    steps: x\n    reports: [\"\"]\n", 4, "an entry is empty"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePipeline(".jetci.yml", []byte(tt.src))
			if tt.line == 0 {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				return
			}
			var pe *PipelineError
			if !errors.As(err, &pe) || pe.Line != tt.line || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("got %v, want line %d and %q", err, tt.line, tt.reason)
			}
		})
	}
}
