package events

import (
	"strconv"
	"strings"
)

// PullNumber reports whether a branch is a pull or merge request's (pull/N
// for refs/pull/N/head, merge-requests/N for refs/merge-requests/N/head, as
// the observer names them) and its number. Such runs test code from outside
// the repository's own branches (a fork's, for instance): they get no
// secrets.
func PullNumber(branch string) (int, bool) {
	n, ok := strings.CutPrefix(branch, "pull/")
	if !ok {
		n, ok = strings.CutPrefix(branch, "merge-requests/")
	}
	if !ok || n == "" || n[0] == '0' || len(n) > 9 || strings.Trim(n, "0123456789") != "" {
		return 0, false
	}
	v, err := strconv.Atoi(n)
	return v, err == nil
}
