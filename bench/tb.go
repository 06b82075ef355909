package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TB lets the benchmark command use what tests use (internal/kubotest
// takes a testing.TB for temp dirs, cleanups and failures) outside `go
// test`. Only the methods below are implemented; the embedded nil
// testing.TB is there for the interface's unexported method, so calling
// any other panics, as a bug here should.
type TB struct {
	testing.TB
	log io.Writer

	mu       sync.Mutex
	root     string
	n        int
	cleanups []func()
	failed   bool
}

// FatalError is what TB.Fatal panics with; the command recovers it.
type FatalError struct{ Msg string }

func (f FatalError) Error() string { return f.Msg }

// NewTB makes a TB whose temp dirs live under one new directory, removed
// by Close.
func NewTB(log io.Writer) (*TB, error) {
	root, err := os.MkdirTemp("", "kitsune-bench-")
	if err != nil {
		return nil, err
	}
	return &TB{log: log, root: root}, nil
}

func (t *TB) Helper()      {}
func (t *TB) Name() string { return "kitsune-bench" }

func (t *TB) TempDir() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n++
	dir := filepath.Join(t.root, fmt.Sprintf("%03d", t.n))
	if err := os.Mkdir(dir, 0o700); err != nil {
		panic(FatalError{Msg: err.Error()})
	}
	return dir
}

func (t *TB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *TB) Log(args ...any)                 { fmt.Fprintln(t.log, args...) }
func (t *TB) Logf(format string, args ...any) { fmt.Fprintf(t.log, format+"\n", args...) }
func (t *TB) Error(args ...any)               { t.Fail(); t.Log(args...) }
func (t *TB) Errorf(format string, args ...any) {
	t.Fail()
	t.Logf(format, args...)
}
func (t *TB) Fatal(args ...any) { t.Fail(); panic(FatalError{Msg: fmt.Sprint(args...)}) }
func (t *TB) Fatalf(format string, args ...any) {
	t.Fail()
	panic(FatalError{Msg: fmt.Sprintf(format, args...)})
}
func (t *TB) FailNow() { t.Fail(); panic(FatalError{Msg: "FailNow"}) }
func (t *TB) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}
func (t *TB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// Close runs the cleanups, last registered first (stopping the Kubo
// daemons), and removes the temp dirs. Safe to call twice.
func (t *TB) Close() {
	t.mu.Lock()
	cs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					fmt.Fprintln(t.log, "cleanup:", r)
				}
			}()
			cs[i]()
		}()
	}
	_ = os.RemoveAll(t.root)
}
