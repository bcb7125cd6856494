//go:build race

package main

// raceEnabled: the suite runs with -race, so the child-process binary is
// built with it too (a race in a child then fails its test).
const raceEnabled = true
