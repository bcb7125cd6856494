//go:build !unix

package runner

import (
	"errors"
	"os"
)

var errLocked = errors.New("locked")

// flockExclusive is not available here: the work directory is not locked.
func flockExclusive(*os.File) error { return nil }
