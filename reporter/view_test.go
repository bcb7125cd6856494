package reporter

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// testView is a view on a new SQLite read model, with no stream behind it.
func testView(t *testing.T) *View {
	t.Helper()
	db, err := readmodel.Open(context.Background(), filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return NewView(db, nil, nil, zerolog.Nop())
}

// putRecords writes records into a view's read model as the fold would.
func putRecords(t *testing.T, v *View, recs ...*Record) {
	t.Helper()
	ctx := context.Background()
	pos, err := v.db.Position(ctx, events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	err = v.db.Apply(ctx, events.StreamResults, pos+1, func(tx *readmodel.Tx, _ uint64) error {
		var rows []readmodel.Row
		for _, r := range recs {
			row, err := rowOf(r)
			if err != nil {
				return err
			}
			rows = append(rows, row)
		}
		return tx.Put(ctx, rows)
	})
	if err != nil {
		t.Fatal(err)
	}
}
