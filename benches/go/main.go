// Command ctxtreebench measures Go's context package on the ctxtree
// workloads (same names as the Rust benches) and appends one JSON line per
// result to $CTXTREE_BENCH_RESULTS/go.jsonl. Run by benches/go/run.sh.
//
// CTXTREE_BENCH_QUICK=1 shortens every measurement (CI smoke runs).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

var quick = os.Getenv("CTXTREE_BENCH_QUICK") != "" && os.Getenv("CTXTREE_BENCH_QUICK") != "0"

type row struct {
	Workload string  `json:"workload"`
	Impl     string  `json:"impl"`
	Unit     string  `json:"unit"`
	Median   float64 `json:"median"`
	P10      float64 `json:"p10"`
	P90      float64 `json:"p90"`
	P99      float64 `json:"p99"`
	Min      float64 `json:"min"`
	Max      float64 `json:"max"`
	N        int     `json:"n"`
	Quick    bool    `json:"quick"`
}

type check struct {
	Workload string  `json:"workload"`
	Impl     string  `json:"impl"`
	Unit     string  `json:"unit"`
	Passed   bool    `json:"passed"`
	Seconds  float64 `json:"seconds"`
	Note     string  `json:"note"`
	Quick    bool    `json:"quick"`
}

var out *os.File

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(out, string(b))
}

func record(workload, unit string, xs []float64) {
	v := append([]float64(nil), xs...)
	sort.Float64s(v)
	q := func(p float64) float64 { return v[int(float64(len(v)-1)*p+0.5)] }
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	r := row{workload, "go", unit, med, q(0.1), q(0.9), q(0.99), v[0], v[len(v)-1], len(v), quick}
	emit(r)
	fmt.Printf("%-28s %-12s median %12.2f %-10s p10 %10.2f  p90 %10.2f  p99 %10.2f  (n=%d)\n",
		workload, "go", med, unit, r.P10, r.P90, r.P99, len(v))
}

func reps(full, q int) int {
	if quick {
		return q
	}
	return full
}

// perOp calibrates n so that one sample takes about the target time, then
// takes several samples of f(n) and records ns per operation.
func perOp(workload string, f func(n int) time.Duration) {
	target := 100 * time.Millisecond
	if quick {
		target = 20 * time.Millisecond
	}
	n := 1
	for {
		d := f(n)
		if d >= target/4 || n >= 1<<32 {
			if d > 0 {
				n = int(float64(n) * float64(target) / float64(d))
			}
			if n < 1 {
				n = 1
			}
			break
		}
		n *= 10
	}
	var xs []float64
	for i := 0; i < reps(21, 5); i++ {
		d := f(n)
		xs = append(xs, float64(d.Nanoseconds())/float64(n))
	}
	record(workload, "ns/op", xs)
}

var sink bool

func w1() {
	parent, cp := context.WithCancel(context.Background())
	defer cp()
	ctx, c := context.WithCancel(parent)
	defer c()
	perOp("W1_check", func(n int) time.Duration {
		t := time.Now()
		s := false
		for i := 0; i < n; i++ {
			s = s != (ctx.Err() != nil)
		}
		sink = s
		return time.Since(t)
	})
	// Two goroutines check the same context; time per check per goroutine.
	perOp("W1_check_2t", func(n int) time.Duration {
		var wg sync.WaitGroup
		var start sync.WaitGroup
		start.Add(1)
		wg.Add(2)
		for g := 0; g < 2; g++ {
			go func() {
				defer wg.Done()
				start.Wait()
				s := false
				for i := 0; i < n; i++ {
					s = s != (ctx.Err() != nil)
				}
				sink = s
			}()
		}
		t := time.Now()
		start.Done()
		wg.Wait()
		return time.Since(t)
	})
}

func w2w4w10() {
	parent, cp := context.WithCancel(context.Background())
	defer cp()
	perOp("W2_child_cancel", func(n int) time.Duration {
		t := time.Now()
		for i := 0; i < n; i++ {
			_, c := context.WithCancel(parent)
			c()
		}
		return time.Since(t)
	})
	// n operations in total over two goroutines: wall time per operation.
	perOp("W4_contended_2t", func(n int) time.Duration {
		var wg sync.WaitGroup
		var start sync.WaitGroup
		start.Add(1)
		wg.Add(2)
		for g := 0; g < 2; g++ {
			m := n / 2
			if g == 0 {
				m = n - n/2
			}
			go func(m int) {
				defer wg.Done()
				start.Wait()
				for i := 0; i < m; i++ {
					_, c := context.WithCancel(parent)
					c()
				}
			}(m)
		}
		t := time.Now()
		start.Done()
		wg.Wait()
		return time.Since(t)
	})
	perOp("W10_timeout_cancel", func(n int) time.Duration {
		t := time.Now()
		for i := 0; i < n; i++ {
			_, c := context.WithTimeout(parent, 30*time.Second)
			c()
		}
		return time.Since(t)
	})
}

func w5() {
	const n = 100_000
	var build, cancel []float64
	for r := 0; r < reps(15, 3)+1; r++ {
		ctxs := make([]context.Context, 0, n)
		cancels := make([]context.CancelFunc, 0, n)
		runtime.GC()
		parent, cp := context.WithCancel(context.Background())
		t := time.Now()
		for i := 0; i < n; i++ {
			c, f := context.WithCancel(parent)
			ctxs = append(ctxs, c)
			cancels = append(cancels, f)
		}
		b := time.Since(t)
		t = time.Now()
		cp()
		c := time.Since(t)
		if ctxs[n/2].Err() == nil {
			panic("not cancelled")
		}
		if r > 0 { // the first run warms up
			build = append(build, float64(b.Nanoseconds())/n)
			cancel = append(cancel, float64(c.Nanoseconds())/n)
		}
		runtime.KeepAlive(cancels)
	}
	record("W5_fanout_cancel/build", "ns/child", build)
	record("W5_fanout_cancel/cancel", "ns/child", cancel)
}

func chain(n int) (build, cancel time.Duration) {
	root, cr := context.WithCancel(context.Background())
	ctx := root
	cancels := make([]context.CancelFunc, 0, n)
	t := time.Now()
	for i := 0; i < n; i++ {
		c, f := context.WithCancel(ctx)
		cancels = append(cancels, f)
		ctx = c
	}
	build = time.Since(t)
	t = time.Now()
	cr()
	cancel = time.Since(t)
	if ctx.Err() == nil {
		panic("not cancelled")
	}
	runtime.KeepAlive(cancels)
	return
}

func w6() {
	const n = 10_000
	var build, cancel []float64
	chain(n)
	for r := 0; r < reps(25, 5); r++ {
		runtime.GC()
		b, c := chain(n)
		build = append(build, float64(b.Nanoseconds())/n)
		cancel = append(cancel, float64(c.Nanoseconds())/n)
	}
	record("W6_deep_chain/build", "ns/level", build)
	record("W6_deep_chain/cancel", "ns/level", cancel)

	// 1,000,000 levels with goroutine stacks capped at 256 KiB, in a child
	// process (exceeding the cap is a fatal error).
	exe, _ := os.Executable()
	t := time.Now()
	cmd := exec.Command(exe, "w6_1m")
	cmd.Env = append(os.Environ(), "CTXTREE_BENCH_CHILD=1")
	outp, err := cmd.CombinedOutput()
	note := "completed"
	if err != nil {
		note = "failed: " + err.Error()
		if len(outp) > 0 {
			first := string(outp)
			for i, ch := range first {
				if ch == '\n' {
					first = first[:i]
					break
				}
			}
			note = first
		}
	}
	c := check{"W6_deep_chain/1M_on_256KiB", "go", "pass", err == nil, time.Since(t).Seconds(), note, quick}
	emit(c)
	fmt.Printf("%-28s %-12s passed=%v %s\n", c.Workload, "go", c.Passed, note)
}

func w7() {
	parent, cp := context.WithCancel(context.Background())
	defer cp()
	var lat []float64
	for r := 0; r < reps(1500, 150); r++ {
		ctx, c := context.WithCancel(parent)
		var ready atomic.Bool
		woke := make(chan time.Time, 1)
		go func() {
			ready.Store(true)
			<-ctx.Done()
			woke <- time.Now()
		}()
		for !ready.Load() {
			runtime.Gosched()
		}
		time.Sleep(300 * time.Microsecond)
		t0 := time.Now()
		c()
		lat = append(lat, float64((<-woke).Sub(t0).Nanoseconds()))
	}
	record("W7_wake_latency", "ns", lat)
}

func w8() {
	parent, cp := context.WithCancel(context.Background())
	defer cp()
	const tasks = 1000
	var lat []float64
	for r := 0; r < reps(300, 30); r++ {
		ctx, c := context.WithCancel(parent)
		var started, finished atomic.Int64
		done := make(chan time.Time, 1)
		for i := 0; i < tasks; i++ {
			go func() {
				started.Add(1)
				<-ctx.Done()
				if finished.Add(1) == tasks {
					done <- time.Now()
				}
			}()
		}
		for started.Load() < tasks {
			runtime.Gosched()
		}
		time.Sleep(time.Millisecond) // every goroutine is blocked on Done
		t0 := time.Now()
		c()
		lat = append(lat, float64((<-done).Sub(t0).Nanoseconds()))
	}
	record("W8_wake_many", "ns", lat)
}

func w9() {
	const n = 100_000
	parent, cp := context.WithCancel(context.Background())
	defer cp()
	ctxs := make([]context.Context, 0, n)
	cancels := make([]context.CancelFunc, 0, n)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for i := 0; i < n; i++ {
		c, f := context.WithCancel(parent)
		ctxs = append(ctxs, c)
		cancels = append(cancels, f)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	record("W9_memory/bytes", "B/child", []float64{float64(m1.HeapAlloc-m0.HeapAlloc) / n})
	record("W9_memory/allocs", "allocs/child", []float64{float64(m1.Mallocs-m0.Mallocs) / n})
	record("W9_memory/handle_bytes", "B/child", []float64{24}) // Context interface (16) + CancelFunc (8), as held in the slices
	runtime.KeepAlive(ctxs)
	runtime.KeepAlive(cancels)
}

type key struct{}

func w11() {
	for _, layers := range []int{1, 10, 100, 1000} {
		ctx := context.WithValue(context.Background(), key{}, 7)
		var cancels []context.CancelFunc
		for i := 0; i < layers; i++ {
			var c context.CancelFunc
			if i%2 == 0 {
				ctx, c = context.WithCancel(ctx)
			} else {
				ctx, c = context.WithTimeout(ctx, time.Hour-time.Duration(i)*time.Millisecond)
			}
			cancels = append(cancels, c)
		}
		perOp(fmt.Sprintf("W11_value_depth/%d", layers), func(n int) time.Duration {
			t := time.Now()
			s := false
			for i := 0; i < n; i++ {
				s = s != (ctx.Value(key{}) == nil)
			}
			sink = s
			return time.Since(t)
		})
		for _, c := range cancels {
			c()
		}
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "w6_1m" {
		debug.SetMaxStack(256 << 10)
		chain(1_000_000)
		return
	}
	dir := os.Getenv("CTXTREE_BENCH_RESULTS")
	if dir == "" {
		dir = "."
	}
	os.MkdirAll(dir, 0o755)
	var err error
	out, err = os.Create(filepath.Join(dir, "go.jsonl"))
	if err != nil {
		panic(err)
	}
	defer out.Close()
	fmt.Printf("go %s, GOMAXPROCS=%d\n", runtime.Version(), runtime.GOMAXPROCS(0))
	w1()
	w2w4w10()
	w5()
	w6()
	w7()
	w8()
	w9()
	w11()
}
