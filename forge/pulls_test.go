package forge

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestPullPayloadFixtures reads each forge's documented example payload.
func TestPullPayloadFixtures(t *testing.T) {
	cases := []struct {
		forge, file string
		want        PullEvent
		branch      string
	}{
		{GitHub, "github-pull_request.json", PullEvent{Forge: GitHub, Action: PullOpened, Number: 2, Title: "Update the README with new information.",
			HeadSHA: "ec26c3e57ca3a959ca5aad62de7213c562f8c821", URL: "https://github.com/Codertocat/Hello-World/pull/2", Repos: []string{"Hello-World"}}, "pull/2"},
		{Gitea, "gitea-pull_request.json", PullEvent{Forge: Gitea, Action: PullUpdated, Number: 1, Title: "Update 'README.md'",
			HeadSHA: "2d3d5a0c9b1e7f6a4c8b2e0d1f3a5c7e9b0d2f4a", URL: "http://localhost:3000/gitea/webhooks/pulls/1", Repos: []string{"webhooks"}}, "pull/1"},
		{GitLab, "gitlab-merge_request.json", PullEvent{Forge: GitLab, Action: PullUpdated, Number: 1, Title: "MS-Viewport",
			HeadSHA: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", URL: "http://example.com/diaspora/merge_requests/1", Fork: true,
			Repos: []string{"gitlab-test", "Gitlab Test"}}, "merge-requests/1"},
	}
	for _, c := range cases {
		body, err := os.ReadFile("testdata/" + c.file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParsePull(c.forge, body)
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		if !reflect.DeepEqual(*got, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.file, *got, c.want)
		}
		if got.Branch() != c.branch {
			t.Errorf("%s: branch %s", c.file, got.Branch())
		}
	}
}

func TestPullActionsAndForks(t *testing.T) {
	gh := func(action, headRepo string) string {
		return `{"action":"` + action + `","number":5,"pull_request":{"number":5,"title":"t\u0000x","head":{"sha":"` + testSHA + `","repo":` + headRepo +
			`},"base":{"repo":{"id":1,"name":"proj","full_name":"o/proj"}}},"repository":{"id":1,"name":"proj","full_name":"o/proj"}}`
	}
	own := `{"id":1,"name":"proj","full_name":"o/proj"}`
	for action, want := range map[string]string{"opened": PullOpened, "reopened": PullOpened, "synchronize": PullUpdated, "closed": PullClosed, "edited": PullEdited, "labeled": PullOther} {
		p, err := ParsePull(GitHub, []byte(gh(action, own)))
		if err != nil || p.Action != want || p.Fork || p.Title != "t x" {
			t.Errorf("%s: %+v %v", action, p, err)
		}
	}
	p, err := ParsePull(GitHub, []byte(gh("opened", `{"id":9,"name":"proj","full_name":"mallory/proj"}`)))
	if err != nil || !p.Fork {
		t.Errorf("fork: %+v %v", p, err)
	}
	p, err = ParsePull(GitHub, []byte(gh("opened", `null`))) // the fork was deleted
	if err != nil || !p.Fork {
		t.Errorf("deleted fork: %+v %v", p, err)
	}
	gl := `{"object_kind":"merge_request","project":{"name":"proj","path_with_namespace":"g/proj"},"object_attributes":{"iid":3,"action":"update","source_project_id":1,"target_project_id":1,"last_commit":{"id":"` + testSHA + `"}}}`
	if p, err := ParsePull(GitLab, []byte(gl)); err != nil || p.Action != PullEdited || p.Fork {
		t.Errorf("gitlab update without oldrev (a title change): %+v %v", p, err)
	}
	for _, bad := range []string{
		`{`, `[]`, `{"action":"opened","number":0,"repository":{"name":"proj"}}`,
		`{"action":"opened","number":1,"pull_request":{"head":{"sha":"zz"}},"repository":{"name":"proj"}}`,
		`{"action":"opened","number":1,"pull_request":{"head":{"sha":"` + testSHA + `"}},"repository":{"name":"../x"}}`,
		`{"action":"opened","number":1,"pull_request":{"head":{}},"repository":{"name":"proj"}}`,
	} {
		if p, err := ParsePull(GitHub, []byte(bad)); err == nil {
			t.Errorf("%s: accepted as %+v", bad, p)
		}
	}
	if _, err := ParsePull(GitLab, []byte(`{"object_kind":"push"}`)); err == nil || !strings.Contains(err.Error(), "not a merge request") {
		t.Errorf("gitlab push as MR: %v", err)
	}
}

// FuzzParsePull: any body gives an event that keeps its promises, or an error.
func FuzzParsePull(f *testing.F) {
	for _, name := range []string{"github-pull_request.json", "gitea-pull_request.json", "gitlab-merge_request.json"} {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(strings.SplitN(name, "-", 2)[0], b)
	}
	f.Add(GitHub, []byte(`{"number":1}`))
	f.Fuzz(func(t *testing.T, forge string, body []byte) {
		p, err := ParsePull(forge, body)
		if err != nil {
			return
		}
		if p.Number <= 0 || len(p.Repos) == 0 || len(p.Title) > 200+len("…") || strings.ContainsAny(p.Title, "\n\r\x00") {
			t.Fatalf("%+v", p)
		}
		if p.HeadSHA != "" && !validSHA(p.HeadSHA) {
			t.Fatalf("head %q", p.HeadSHA)
		}
		for _, r := range p.Repos {
			if !repoName(r) {
				t.Fatalf("repo %q", r)
			}
		}
		if b := p.Branch(); !strings.HasPrefix(b, "pull/") && !strings.HasPrefix(b, "merge-requests/") {
			t.Fatalf("branch %q", b)
		}
	})
}
