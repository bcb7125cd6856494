//go:build !race

package readmodel

const raceOn = false
