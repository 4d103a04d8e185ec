package gateway

import (
	"context"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iot-gateway/iot-gateway/app/config"
)

// A FUSE filesystem (go-fuse's loopback over a temporary directory) whose
// writes and fsyncs can be made to hang, as on a wedged disk: the kernel
// waits for the answer, the spool's Append with it.

// diskGate holds writes while closed.
type diskGate struct {
	mu      sync.Mutex
	held    chan struct{} // non-nil: writes wait for it to close
	entered chan struct{} // one send per write that waits
}

func (g *diskGate) wait() {
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held == nil {
		return
	}
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-held
}

func (g *diskGate) hold() {
	g.mu.Lock()
	g.held = make(chan struct{})
	g.mu.Unlock()
}

func (g *diskGate) release() {
	g.mu.Lock()
	if g.held != nil {
		close(g.held)
		g.held = nil
	}
	g.mu.Unlock()
}

type gatedNode struct {
	*fs.LoopbackNode
	gate *diskGate
}

// WrapChild gives every node below the root the same gate.
func (n *gatedNode) WrapChild(_ context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &gatedNode{LoopbackNode: ops.(*fs.LoopbackNode), gate: n.gate}
}

func (n *gatedNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, ff, errno := n.LoopbackNode.Open(ctx, flags)
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		fh = &gatedFile{LoopbackFile: lf, gate: n.gate}
	}
	return fh, ff, errno
}

func (n *gatedNode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, ff, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		fh = &gatedFile{LoopbackFile: lf, gate: n.gate}
	}
	return in, fh, ff, errno
}

type gatedFile struct {
	*fs.LoopbackFile
	gate *diskGate
}

func (f *gatedFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.gate.wait()
	return f.LoopbackFile.Write(ctx, data, off)
}

func (f *gatedFile) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	f.gate.wait()
	return f.LoopbackFile.Writev(ctx, data, off)
}

func (f *gatedFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	f.gate.wait()
	return f.LoopbackFile.Fsync(ctx, flags)
}

// mountGated mounts a gated loopback of a fresh directory and returns the
// mount point; it is unmounted when the test ends (writes released first).
func mountGated(t *testing.T) (string, *diskGate) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a FUSE filesystem")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse:", err)
	}
	back, mnt := t.TempDir(), t.TempDir()
	gate := &diskGate{entered: make(chan struct{}, 1)}
	var st syscall.Stat_t
	if err := syscall.Stat(back, &st); err != nil {
		t.Fatal(err)
	}
	root := &gatedNode{LoopbackNode: &fs.LoopbackNode{RootData: &fs.LoopbackRoot{Path: back, Dev: st.Dev}}, gate: gate}
	srv, err := fs.Mount(mnt, root, &fs.Options{MountOptions: fuse.MountOptions{FsName: "iotgw-wedged", DirectMount: true}})
	if err != nil {
		t.Skip("cannot mount FUSE here:", err)
	}
	t.Cleanup(func() {
		gate.release()
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt, gate
}

// The spool on a disk whose writes hang: the appender is stuck inside
// Append (holding the spool's append lock), Stats still answers, and the
// watchdog stops pinging; when the disk answers again, the pings resume.
func TestWatchdogQuietOnWedgedDisk(t *testing.T) {
	mnt, gate := mountGated(t)
	const interval = 300 * time.Millisecond
	sock := notifySocket(t, interval)
	g, logs := testGateway(t, "http://127.0.0.1:1", func(c *config.Config) { c.Spool.Dir = mnt })
	defer g.closeState()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.appendLoop()
	defer func() { gate.release(); g.stopAppender(); <-g.appended }()
	g.accepting.Store(true)
	go g.watchdog(ctx)

	g.enqueue(pending{data: reading(0), points: 1})
	waitUntil(t, "a first append on the FUSE disk", func() bool { return g.spool.Stats().Records == 1 })
	if !nextPing(t, sock, 10*interval) {
		t.Fatal("no watchdog ping from a healthy gateway")
	}
	gate.hold()
	g.enqueue(pending{data: reading(1), points: 1})
	<-gate.entered // the append is inside a write the disk does not answer
	done := make(chan struct{})
	go func() { _ = g.spool.Stats(); close(done) }()
	select {
	case <-done: // what the watchdog used to ask, and it answers
	case <-time.After(5 * time.Second):
		t.Fatal("Stats blocked on the wedged disk")
	}
	time.Sleep(interval)
	for nextPing(t, sock, 10*time.Millisecond) {
	}
	if nextPing(t, sock, 3*interval) {
		t.Fatal("watchdog pinged while the disk has hung an append")
	}
	gate.release()
	if !nextPing(t, sock, 10*interval) {
		t.Fatalf("watchdog did not resume once the disk answered:\n%s", logs)
	}
	waitUntil(t, "the held append", func() bool { return g.spool.Stats().Records == 2 })
}
