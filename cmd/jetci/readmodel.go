package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// dbFlags are the reporter's read model flags: --db and --history-retention.
type dbFlags struct {
	db        *string
	retention *time.Duration
}

func readModelFlags(fs *flag.FlagSet, what string) dbFlags {
	return dbFlags{
		db: fs.String("db", "", "the reporter's read model: a postgres://user@host/db URL (several reporters may share it), "+
			"or the path of a SQLite file (rebuilt from the streams when missing) (default: "+what+")"),
		retention: fs.Duration("history-retention", 0, "delete finished job records older than this from the read model, e.g. 2160h (0: keep everything)"),
	}
}

func (f dbFlags) check() error {
	if *f.retention < 0 {
		return errors.New("--history-retention must be ≥ 0")
	}
	return nil
}

// dsn is the --db value, or the SQLite file under data when set.
func (f dbFlags) dsn(data string) string {
	if *f.db == "" && data != "" {
		return filepath.Join(data, reporter.DBFile)
	}
	return *f.db
}

const reindexUsage = `
Usage: jetci reindex --nats URL (--db URL-OR-FILE | --data DIR)

Empties the reporter's read model and rebuilds it from the JETCI_RESULTS
stream, then exits. Stop the reporters that use the database first (jetci up
with the same --data, or every reporter on the Postgres database). A SQLite
file that is not a database any more is replaced. What the stream no longer
holds (see --history-retention and the stream's limits in docs/wire.md) cannot
be rebuilt.
`

func (m *Main) reindex(ctx context.Context, args []string) error {
	fs := m.flagSet("reindex", reindexUsage)
	nf := connFlags(fs, events.RoleAdmin)
	db := fs.String("db", "", "the read model: a postgres:// URL or a SQLite file")
	data := fs.String("data", "", "the --data directory of jetci up (its read model is DIR/"+reporter.DBFile+")")
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	dsn := *db
	if dsn == "" && *data != "" {
		dsn = filepath.Join(*data, reporter.DBFile)
	}
	if dsn == "" {
		return errors.New("give --db or --data")
	}
	nc, js, err := m.connect(ctx, nf, "jetci-reindex", false, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	start := time.Now()
	st, err := reporter.Reindex(ctx, js, dsn, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "reindexed: %d events applied (%d malformed, recorded) in %s\n", st.Applied, st.Bad, time.Since(start).Round(time.Millisecond))
	return nil
}
