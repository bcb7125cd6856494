package reporter

import (
	"context"
	"sync"
	"time"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// cellCache holds the latest record of every module × job × arch of every
// branch in memory (listed, Record.Listed): the overview, the branches and
// the module grid read it, not the database. It is as big as the grid, not
// the history. The fold keeps it current after each batch it commits; when
// the database moved without it (another reporter on the same PostgreSQL
// database), it is loaded again from the database on the next read, at most
// a second late.
type cellCache struct {
	mu       sync.Mutex
	loaded   bool
	pos      uint64 // the read model's position it reflects
	advanced time.Time
	branches map[readmodel.BranchRow]map[cellID]cell
}

type cellID struct{ module, job, arch string }

type cell struct {
	rec   Record
	first int64
}

// update applies the records a batch changed, which moved the position
// from..to; a batch that did not start where the cache is makes it load
// again.
func (c *cellCache) update(from, to uint64, changed []*Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.loaded {
		return
	}
	if c.pos != from {
		c.loaded = false
		return
	}
	for _, r := range changed {
		b := readmodel.BranchRow{Repo: r.Repo, Branch: r.Branch}
		cells := c.branches[b]
		if cells == nil {
			cells = map[cellID]cell{}
			c.branches[b] = cells
		}
		id := cellID{r.Module, r.Job, r.Arch}
		first := nanos(firstSeen(r))
		old, ok := cells[id]
		switch {
		case ok && old.rec.JobID == r.JobID:
			old.rec = r.Listed()
			old.first = max(old.first, first)
			cells[id] = old
		case !ok || first >= old.first: // the rule of readmodel's cells table
			cells[id] = cell{r.Listed(), first}
		}
	}
	c.pos, c.advanced = to, time.Now()
}

// latest returns the cells of repo's branches (one branch when set), in no
// particular order.
func (c *cellCache) latest(ctx context.Context, db *readmodel.DB, repo, branch string) ([]readmodel.BranchRow, [][]Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pos, err := db.Position(ctx, events.StreamResults)
	if err != nil {
		return nil, nil, err
	}
	if c.loaded && pos != c.pos && time.Since(c.advanced) > time.Second {
		c.loaded = false // another reporter moved the database
	}
	if !c.loaded {
		if err := c.load(ctx, db, pos); err != nil {
			return nil, nil, err
		}
	}
	var brs []readmodel.BranchRow
	var out [][]Record
	for b, cells := range c.branches {
		if repo != "" && b.Repo != repo || branch != "" && b.Branch != branch {
			continue
		}
		recs := make([]Record, 0, len(cells))
		for _, cl := range cells {
			recs = append(recs, cl.rec)
		}
		brs, out = append(brs, b), append(out, recs)
	}
	return brs, out, nil
}

func (c *cellCache) load(ctx context.Context, db *readmodel.DB, pos uint64) error {
	brs, err := db.Branches(ctx, "")
	if err != nil {
		return err
	}
	m := make(map[readmodel.BranchRow]map[cellID]cell, len(brs))
	for _, b := range brs {
		rows, err := db.Cells(ctx, b.Repo, b.Branch)
		if err != nil {
			return err
		}
		cells := make(map[cellID]cell, len(rows))
		for _, row := range rows {
			r, err := recordOf(row)
			if err != nil {
				return err
			}
			cells[cellID{r.Module, r.Job, r.Arch}] = cell{r.Listed(), row.FirstSeen}
		}
		m[b] = cells
	}
	c.branches, c.pos, c.loaded, c.advanced = m, pos, true, time.Now()
	return nil
}
