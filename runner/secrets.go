package runner

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ParseSecret reads a --secret flag: NAME=env:VAR takes the value of the
// runner's variable VAR, NAME=file:PATH the content of a file (one trailing
// newline dropped). The value is read now, once; an empty one is an error.
func ParseSecret(spec string) (name, value string, err error) {
	name, src, ok := strings.Cut(spec, "=")
	if !ok || !envNameRE.MatchString(name) {
		return "", "", fmt.Errorf("secret %q: want NAME=env:VAR or NAME=file:PATH", spec)
	}
	kind, where, _ := strings.Cut(src, ":")
	switch kind {
	case "env":
		if !envNameRE.MatchString(where) {
			return "", "", fmt.Errorf("secret %s: %q is not a variable name", name, where)
		}
		v, ok := os.LookupEnv(where)
		if !ok {
			return "", "", fmt.Errorf("secret %s: $%s is not set", name, where)
		}
		value = v
	case "file":
		if where == "" {
			return "", "", fmt.Errorf("secret %s: file: needs a path", name)
		}
		b, err := os.ReadFile(where)
		if err != nil {
			return "", "", fmt.Errorf("secret %s: %w", name, err)
		}
		value = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	default:
		return "", "", fmt.Errorf("secret %s: %q: the value comes from env:VAR or file:PATH, never from the command line", name, src)
	}
	if value == "" {
		return "", "", errors.New("secret " + name + ": the value is empty")
	}
	return name, value, nil
}
