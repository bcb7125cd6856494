package main

import (
	"reflect"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	for _, tc := range []struct {
		line string
		want metrics
	}{
		{"1	2601353730 ns/op	        47.63 est_15k_s	       314.9 jobs_per_s", nil},
		{"2601353730 ns/op	        47.63 est_15k_s	       314.9 jobs_per_s",
			metrics{"ns/op": 2601353730, "est_15k_s": 47.63, "jobs_per_s": 314.9}},
		{"", metrics{}},
		{"12 ms odd", metrics{"ms": 12}},
		{"x y 3 z", metrics{"z": 3}},
	} {
		got := parseMetrics(tc.line)
		if tc.want == nil {
			continue // the iteration count is cut off by benchLine, not here
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseMetrics(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
	m := benchLine.FindStringSubmatch("BenchmarkDrainNoOp-2   	       1	2601353730 ns/op	        47.63 est_15k_s")
	if m == nil || !reflect.DeepEqual(parseMetrics(m[1]), metrics{"ns/op": 2601353730, "est_15k_s": 47.63}) {
		t.Fatalf("bench line: %v", m)
	}
}
