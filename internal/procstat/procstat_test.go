package procstat

import (
	"runtime"
	"testing"
)

func TestSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	if MemoryKB(Self(), "VmHWM") <= 0 || MemoryKB(Self(), "VmRSS") <= 0 {
		t.Fatal("no memory figures for this process")
	}
	if MemoryKB(Self(), "NoSuchField") != 0 || MemoryKB(-1, "VmRSS") != 0 || CPUSeconds(-1) != 0 {
		t.Fatal("unknown fields and processes must read 0")
	}
	x := 0
	for i := range 50_000_000 {
		x += i
	}
	_ = x
	if CPUSeconds(Self()) <= 0 {
		t.Fatal("no CPU time for this process")
	}
}
