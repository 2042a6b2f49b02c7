package unpack

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"testing/iotest"
)

// endless is a source of zeros that fails the test when read after
// closed is set.
type endless struct {
	t      *testing.T
	closed atomic.Bool
	reads  atomic.Int64
}

func (e *endless) Read(p []byte) (int, error) {
	if e.closed.Load() {
		e.t.Error("source read after Close returned")
	}
	e.reads.Add(1)
	clear(p)
	return len(p), nil
}

func TestAheadReader(t *testing.T) {
	t.Parallel()
	data := make([]byte, 1<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	pool := newBufferPool(1000)

	t.Run("every byte comes through in order, read in any sizes", func(t *testing.T) {
		a := newAheadReader(iotest.HalfReader(bytes.NewReader(data)), pool, 3)
		defer a.Close()
		if err := iotest.TestReader(a, data); err != nil {
			t.Error(err)
		}
	})

	t.Run("the source's error comes after its last bytes", func(t *testing.T) {
		bad := errors.New("digest mismatch")
		a := newAheadReader(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(bad)), pool, 3)
		defer a.Close()
		got, err := io.ReadAll(a)
		if !errors.Is(err, bad) || !bytes.Equal(got, data) {
			t.Errorf("got %d bytes, %v; want %d bytes, %v", len(got), err, len(data), bad)
		}
		if _, err := a.Read(make([]byte, 1)); !errors.Is(err, bad) {
			t.Errorf("a later Read returns %v, want %v again", err, bad)
		}
	})

	t.Run("a source that gives nothing ends with io.ErrNoProgress", func(t *testing.T) {
		a := newAheadReader(readerFunc(func([]byte) (int, error) { return 0, nil }), pool, 2)
		defer a.Close()
		if _, err := io.ReadAll(a); !errors.Is(err, io.ErrNoProgress) {
			t.Errorf("error %v, want io.ErrNoProgress", err)
		}
	})

	t.Run("Close stops the producer: the source is not read once it returns", func(t *testing.T) {
		src := &endless{t: t}
		a := newAheadReader(src, pool, 4)
		if _, err := io.ReadFull(a, make([]byte, 2500)); err != nil {
			t.Fatal(err)
		}
		a.Close()
		src.closed.Store(true)
		if _, err := a.Read(make([]byte, 10)); err == nil {
			t.Error("Read after Close succeeds")
		}
		if n := src.reads.Load(); n > 8 {
			t.Errorf("source read %d times, want the few buffers ahead at most", n)
		}
	})

	t.Run("Close waits for a Read of the source in progress", func(t *testing.T) {
		release, reading := make(chan struct{}), make(chan struct{})
		src := readerFunc(func(p []byte) (int, error) {
			close(reading)
			<-release
			return 0, io.EOF
		})
		a := newAheadReader(src, pool, 2)
		<-reading
		closed := make(chan struct{})
		go func() {
			a.Close()
			close(closed)
		}()
		select {
		case <-closed:
			t.Fatal("Close returned while the source was being read")
		default:
		}
		close(release)
		<-closed
	})

	t.Run("Close before any Read, and twice, is fine", func(t *testing.T) {
		a := newAheadReader(bytes.NewReader(data), pool, 2)
		if err := a.Close(); err != nil {
			t.Error(err)
		}
		if err := a.Close(); err != nil {
			t.Error(err)
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
