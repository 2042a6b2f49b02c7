package unpack

import (
	"errors"
	"io"
	"sync"
)

// aheadReader reads a stream on a goroutine of its own, up to a fixed
// number of buffers ahead of its reader, so that producing the bytes (a
// network read and its digest, a decoder) and consuming them (tar parsing,
// file writes) run on two cores instead of taking turns on one. Memory is
// bounded by the buffers: a stream that expands enormously is read no
// further ahead than that.
//
// Read and Close are for one goroutine, as io.Reader's callers use them.
type aheadReader struct {
	pool   *bufferPool
	filled chan chunk    // produced, in order
	free   chan []byte   // buffers to produce into
	stop   chan struct{} // closed by Close
	done   chan struct{} // closed when the producer returns

	cur  []byte // the part of buf not yet read
	buf  []byte // the buffer cur is in, returned to free once read
	err  error  // the stream's end (io.EOF) or error, once reached
	shut bool
}

// chunk is a run of the stream's bytes and, when the stream ended after
// them, why.
type chunk struct {
	b   []byte
	err error
}

// maxEmptyReads bounds consecutive (0, nil) reads from the source before
// the stream is ended with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// bufferPool holds idle buffers of one size, so that the layers of an
// image, unpacked a few at a time, reuse the same few buffers.
type bufferPool struct {
	size int
	p    sync.Pool // *[]byte
}

func newBufferPool(size int) *bufferPool { return &bufferPool{size: size} }

func (bp *bufferPool) get() []byte {
	if b, ok := bp.p.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, bp.size)
}

func (bp *bufferPool) put(b []byte) {
	b = b[:cap(b)]
	bp.p.Put(&b)
}

// newAheadReader starts reading r ahead into at most n buffers from pool,
// taken as they are first needed and given back by Close.
func newAheadReader(r io.Reader, pool *bufferPool, n int) *aheadReader {
	a := &aheadReader{
		pool:   pool,
		filled: make(chan chunk, n),
		free:   make(chan []byte, n),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go a.produce(r, n)
	return a
}

// produce reads r into buffers until r ends or fails, or Close stops it.
// Each buffer is filled before it is handed over, but for the last; the
// stream's end travels with the last bytes.
func (a *aheadReader) produce(r io.Reader, n int) {
	defer close(a.done)
	made := 0
	for {
		var buf []byte
		select {
		case buf = <-a.free:
		case <-a.stop:
			return
		default:
			if made < n {
				buf = a.pool.get()
				made++
				break
			}
			select {
			case buf = <-a.free:
			case <-a.stop:
				return
			}
		}
		got, empty := 0, 0
		var err error
		for got < len(buf) && err == nil {
			var k int
			k, err = r.Read(buf[got:])
			got += k
			if k == 0 && err == nil {
				if empty++; empty >= maxEmptyReads {
					err = io.ErrNoProgress
				}
			}
		}
		select {
		case a.filled <- chunk{b: buf[:got], err: err}:
		case <-a.stop:
			a.pool.put(buf)
			return
		}
		if err != nil {
			return
		}
	}
}

// Read returns the stream's bytes, then its end: io.EOF, or the error the
// source returned.
func (a *aheadReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for len(a.cur) == 0 {
		if a.err != nil {
			return 0, a.err
		}
		if a.shut {
			return 0, errReadAfterClose
		}
		if a.buf != nil {
			a.free <- a.buf[:cap(a.buf)] // never blocks: free holds every buffer
			a.buf = nil
		}
		c := <-a.filled
		a.cur, a.buf, a.err = c.b, c.b, c.err
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

// Close stops the producer and waits for it to return, so that the
// source is no longer read once Close returns. A Read of the source in
// progress is waited for: a caller abandoning a stream from a stalled
// server closes the source or cancels its request to end that Read.
func (a *aheadReader) Close() error {
	if a.shut {
		return nil
	}
	a.shut = true
	close(a.stop)
	<-a.done
	// The producer is gone: every buffer it took is in a channel or buf.
	if a.buf != nil {
		a.pool.put(a.buf)
	}
	a.cur, a.buf = nil, nil
	for {
		select {
		case b := <-a.free:
			a.pool.put(b)
		case c := <-a.filled:
			a.pool.put(c.b)
		default:
			return nil
		}
	}
}

// errReadAfterClose is what Read returns once Close was called.
var errReadAfterClose = errors.New("read after close")
