//go:build race

package readmodel

// raceOn: the race detector slows the database work several times; the
// tests at scale run smaller (they run at full size without it).
const raceOn = true
