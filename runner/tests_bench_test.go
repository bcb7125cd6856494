package runner

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkTestCollector measures the parsers on the output they sit on:
// 10,000 tests' worth of go test -json events (run, output, pass: what
// test2json prints per test), then of unittest -v lines, and of plain output
// that is no test at all (what most job output is).
func BenchmarkTestCollector(b *testing.B) {
	var gojson, py, plain strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&gojson, `{"Time":"2026-12-01T19:00:00.%06dZ","Action":"run","Package":"example.com/m/pkg%d","Test":"TestCase%d"}`+"\n", i, i%50, i)
		fmt.Fprintf(&gojson, `{"Time":"2026-12-01T19:00:00.%06dZ","Action":"output","Package":"example.com/m/pkg%d","Test":"TestCase%d","Output":"=== RUN   TestCase%d\n"}`+"\n", i, i%50, i, i)
		fmt.Fprintf(&gojson, `{"Time":"2026-12-01T19:00:00.%06dZ","Action":"pass","Package":"example.com/m/pkg%d","Test":"TestCase%d","Elapsed":0.01}`+"\n", i, i%50, i)
		fmt.Fprintf(&py, "test_case_%d (tests.test_mod%d.TestSomething.test_case_%d) ... ok\n", i, i%50, i)
		fmt.Fprintf(&plain, "compiling module %d of 10000: src/pkg%d/file_%d.c -> build/obj/file_%d.o [ok]\n", i, i%50, i, i)
	}
	for _, in := range []struct{ name, data string }{{"go-test-json", gojson.String()}, {"unittest", py.String()}, {"plain", plain.String()}} {
		b.Run(in.name, func(b *testing.B) {
			data := []byte(in.data)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				c := newTestCollector()
				for i := 0; i < len(data); i += 32 << 10 { // pipe-sized writes
					c.Write(data[i:min(i+32<<10, len(data))])
				}
				c.Flush()
				if tests, _ := c.finish(nil); in.name != "plain" && len(tests) != 500 {
					b.Fatalf("%d tests", len(tests))
				}
			}
		})
	}
}
