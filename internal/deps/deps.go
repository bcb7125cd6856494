// Package deps pins dependencies while the services are written. Temporary.
package deps

import (
	_ "github.com/go-git/go-git/v5"
	_ "golang.org/x/sync/errgroup"
	_ "gopkg.in/yaml.v3"
)
