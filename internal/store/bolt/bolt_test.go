package bolt

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"

	"verge.dev/verge/internal/store"
	"verge.dev/verge/internal/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func openTemp(t *testing.T, ringSize int) *Store {
	t.Helper()
	s, err := open(filepath.Join(t.TempDir(), "store.db"), testLogger(t), ringSize)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTemp(t, defaultRingSize) })
}

func TestReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	a, _ := s.Create(ctx, "/k/a", []byte("a"))
	b, _ := s.Create(ctx, "/k/b", []byte("b"))
	b2, _ := s.Update(ctx, "/k/b", []byte("b2"), b)
	c, _ := s.Create(ctx, "/k/c", []byte("c"))
	d, err := s.Delete(ctx, "/k/c", c)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s, err = Open(path, testLogger(t))
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	kvs, rev, err := s.List(ctx, "/k/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	want := []store.KeyValue{
		{Key: "/k/a", Value: []byte("a"), CreateRevision: a, ModRevision: a},
		{Key: "/k/b", Value: []byte("b2"), CreateRevision: b, ModRevision: b2},
	}
	if diff := cmp.Diff(want, kvs); diff != "" {
		t.Errorf("List after reopen (-want +got):\n%s", diff)
	}
	if rev != d {
		t.Errorf("revision after reopen = %d, want %d", rev, d)
	}
	next, err := s.Create(ctx, "/k/e", []byte("e"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if next != d+1 {
		t.Errorf("first revision after reopen = %d, want %d", next, d+1)
	}

	// History before the reopen is gone; the current revision still works.
	ch, errf, err := s.Watch(ctx, "/k/", a)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	for range ch {
		t.Errorf("old watch delivered an event")
	}
	if err := errf(); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("Watch before reopen: errf = %v, want %v", err, store.ErrCompacted)
	}
	ch, _, err = s.Watch(ctx, "/k/", d)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if ev := <-ch; ev.KV.Key != "/k/e" || ev.KV.ModRevision != next {
		t.Errorf("Watch from reopen revision: got %s at %d, want /k/e at %d", ev.KV.Key, ev.KV.ModRevision, next)
	}
}

// TestRingOverflow checks both ways a watch leaves the ring: starting before
// it, and a reader that falls behind by more than the ring holds.
func TestRingOverflow(t *testing.T) {
	ctx := t.Context()
	s := openTemp(t, 16)
	_, start, err := s.List(ctx, "/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	slow, slowErr, err := s.Watch(ctx, "/", start)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	var revs []int64
	for i := range 2*watchBuffer + 100 { // more than the channel and the ring hold
		rev, err := s.Update(ctx, "/o/k", []byte(strconv.Itoa(i)), 0)
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
		revs = append(revs, rev)
	}

	// The slow reader gets a gap-free run (how long depends on scheduling,
	// at most what its channel and one batch hold), then ErrCompacted.
	var got []int64
	for ev := range slow {
		got = append(got, ev.KV.ModRevision)
	}
	if len(got) >= len(revs) {
		t.Fatalf("slow watcher got all %d events, want it dropped", len(revs))
	}
	if diff := cmp.Diff(revs[:len(got)], got); diff != "" {
		t.Errorf("slow watcher revisions (-want +got):\n%s", diff)
	}
	if err := slowErr(); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("slow watcher errf = %v, want %v", err, store.ErrCompacted)
	}

	tests := []struct {
		name    string
		after   int64
		want    []int64
		wantErr error
	}{
		{"before ring", revs[len(revs)-18], nil, store.ErrCompacted},
		{"oldest in ring", revs[len(revs)-17], revs[len(revs)-16:], nil},
		{"current", revs[len(revs)-1], nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(ctx)
			ch, errf, err := s.Watch(ctx, "/o/", tt.after)
			if err != nil {
				t.Fatalf("Watch: %v", err)
			}
			var got []int64
			for range tt.want {
				got = append(got, (<-ch).KV.ModRevision)
			}
			cancel()
			for range ch {
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("revisions (-want +got):\n%s", diff)
			}
			if err := errf(); !errors.Is(err, tt.wantErr) {
				t.Errorf("errf = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestInvalidKey(t *testing.T) {
	s := openTemp(t, defaultRingSize)
	if _, err := s.Create(t.Context(), "no-slash", []byte("v")); err == nil {
		t.Errorf("Create of a key without a leading slash succeeded")
	}
	if _, _, err := s.List(t.Context(), "no-slash"); err == nil {
		t.Errorf("List of a prefix without a leading slash succeeded")
	}
}

const (
	helperEnv = "VERGE_STORE_CRASH_HELPER_PATH"
	crashAcks = 300
	// crashMaxWrites bounds the child in case the parent never kills it.
	crashMaxWrites = 100_000
)

// TestHelperWriter is not a test: TestCrashDurability runs it in a child
// process that writes until killed, printing one line per acknowledged write.
func TestHelperWriter(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		return
	}
	s, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintf(os.Stderr, "open: %v\n", err)
		os.Exit(2)
	}
	for i := range crashMaxWrites {
		key := fmt.Sprintf("/crash/%06d", i)
		rev, err := s.Update(context.Background(), key, []byte("value-"+key), 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "update: %v\n", err)
			os.Exit(2)
		}
		// Unbuffered: the ack leaves the process only after Update returned.
		fmt.Fprintf(os.Stdout, "ack %s %d\n", key, rev)
	}
	os.Exit(0)
}

// TestCrashDurability kills a writer with SIGKILL while it is writing and
// checks that every write it acknowledged is in the file.
func TestCrashDurability(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("stdout pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start writer: %v", err)
	}
	acks := map[string]int64{}
	sc := bufio.NewScanner(stdout)
	for len(acks) < crashAcks && sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "ack" {
			continue // test framework output
		}
		rev, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			t.Fatalf("parse ack %q: %v", sc.Text(), err)
		}
		acks[f[1]] = rev
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill writer: %v", err)
	}
	// Acks still in the pipe were acknowledged before the kill too.
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "ack" {
			rev, _ := strconv.ParseInt(f[2], 10, 64)
			acks[f[1]] = rev
		}
	}
	_ = cmd.Wait() // killed: the error is expected
	if len(acks) < crashAcks {
		t.Fatalf("writer acknowledged %d writes before exiting, want %d; stderr:\n%s", len(acks), crashAcks, stderr.String())
	}

	s, err := Open(path, testLogger(t))
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for key, rev := range acks {
		kv, err := s.Get(t.Context(), key)
		if err != nil {
			t.Errorf("acknowledged key %s lost: %v", key, err)
			continue
		}
		if string(kv.Value) != "value-"+key || kv.ModRevision != rev {
			t.Errorf("key %s = %q at revision %d, want %q at %d", key, kv.Value, kv.ModRevision, "value-"+key, rev)
		}
	}
	t.Logf("%d acknowledged writes survived SIGKILL", len(acks))
}

func BenchmarkUpdate(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "store.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	defer s.Close()
	ctx := b.Context()
	value := []byte(strings.Repeat("x", 512))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Update(ctx, "/bench/key", value, 0); err != nil {
			b.Fatalf("Update: %v", err)
		}
	}
}
