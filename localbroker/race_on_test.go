//go:build race

package localbroker

// raceEnabled: the race detector makes every stack frame larger.
const raceEnabled = true
