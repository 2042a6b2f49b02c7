package main

import (
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
)

// The content generator makes bytes that compress, and decompress, like
// the machine code and data of a large shared library. It writes a stream
// of short segments, as an LZ77 parse of real code looks:
//
//   - literals: short runs of bytes drawn from a skewed (Zipf-like)
//     distribution, as opcode and ModRM bytes are, so Huffman coding
//     gains about a quarter;
//   - copies of earlier bytes, mostly short and near (repeated instruction
//     sequences), some reusing the previous distance (tables with a
//     stride), a few from far back, beyond gzip's 32 KiB window, which
//     zstd's larger window finds (repeated structures across the file);
//   - zero runs (alignment padding).
//
// The mix was calibrated against real binaries of about 40 % gzip ratio
// (gcc's cc1, libz3): gzip at its default level keeps about 40 %, zstd at
// its default a little less, and decoding costs about as much per byte.
// The harness measures and prints the ratio it gets.
type contentMix struct {
	literal  int     // share of segments, in 1/1024, that are literal runs
	zero     int     // share of segments, in 1/1024, that are zero runs
	rep      int     // share of copies, in 1/1024, that reuse the last distance
	far      int     // share of copies, in 1/1024, from beyond 32 KiB
	zipf     float64 // offset of the literal distribution: larger is flatter
	maxLit   int     // longest literal run
	maxCopy  int     // longest copy
	nearDist int     // farthest near copy
}

// mix is the calibrated content mix.
var mix = contentMix{literal: 400, zero: 12, rep: 150, far: 60, zipf: 6, maxLit: 12, maxCopy: 32, nearDist: 4 << 10}

// chunkSize is how much content is generated at a time; far copies reach
// back within a chunk.
const chunkSize = 4 << 20

// literalTable maps 12 uniform random bits to a byte, with byte ranks
// weighted 1/(rank+zipf); the bytes are shuffled so that the frequent ones
// are not simply 0, 1, 2.
func literalTable(zipf float64) *[4096]byte {
	var weights [256]float64
	sum := 0.0
	for r := range weights {
		weights[r] = 1 / (float64(r) + zipf)
		sum += weights[r]
	}
	order := rand.New(rand.NewPCG(1, 2)).Perm(256)
	var t [4096]byte
	i, acc := 0, 0.0
	for r, w := range weights {
		acc += w / sum
		end := int(math.Round(acc * 4096))
		for ; i < end && i < len(t); i++ {
			t[i] = byte(order[r])
		}
	}
	for ; i < len(t); i++ {
		t[i] = byte(order[255])
	}
	return &t
}

// content is a deterministic stream of binary-like bytes; it implements
// io.Reader and never ends.
type content struct {
	rng   *rand.Rand
	mix   contentMix
	table *[4096]byte
	buf   []byte // generated, not yet read
	back  []byte // storage of buf
	last  int    // distance of the previous copy
	left  int64  // bytes still wanted, when known (sized); 0 if not
}

// newContent returns the content stream for one file, seeded by the
// harness's seed and the file's name.
func newContent(seed uint64, name string) *content {
	return newContentMix(seed, name, mix)
}

// sized says that no more than n bytes will be read, so that no more are
// generated: a small file costs what it holds, not a chunk. The bytes are
// the same as without it, since generation only ever looks back.
func (c *content) sized(n int64) *content {
	c.left = n
	return c
}

func newContentMix(seed uint64, name string, m contentMix) *content {
	h := fnv.New64a()
	io.WriteString(h, name)
	return &content{
		rng:   rand.New(rand.NewPCG(seed, h.Sum64())),
		mix:   m,
		table: literalTable(m.zipf),
		last:  1,
	}
}

// Read fills p; it never returns an error.
func (c *content) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(c.buf) == 0 {
			c.fill()
		}
		k := copy(p[n:], c.buf)
		c.buf = c.buf[k:]
		n += k
	}
	return n, nil
}

// fill generates the next chunk into c.back.
func (c *content) fill() {
	size := chunkSize
	if c.left > 0 {
		size = int(min(int64(size), c.left))
		c.left -= int64(size)
	}
	if cap(c.back) < size {
		c.back = make([]byte, size)
	}
	b, m := c.back[:size], c.mix
	i := 0
	for i < len(b) {
		r := c.rng.Uint64()
		kind := int(r & 1023)
		r >>= 10
		switch {
		case kind < m.literal || i < 64:
			// Literal lengths 1..maxLit, short ones likelier.
			n := min(1+int(r%uint64(m.maxLit))*int((r>>8)%uint64(m.maxLit))/m.maxLit, len(b)-i)
			r >>= 16
			for j := range n {
				if j%3 == 0 && j > 0 {
					r = c.rng.Uint64()
				}
				b[i+j] = c.table[r&4095]
				r >>= 12
			}
			i += n
		case kind < m.literal+m.zero:
			n := min(8+int(r%56), len(b)-i)
			clear(b[i : i+n])
			i += n
		default:
			// Copy lengths 3..maxCopy, short ones likelier.
			n := min(3+int(r%uint64(m.maxCopy))*int((r>>8)%uint64(m.maxCopy))/m.maxCopy, len(b)-i)
			sel := int((r >> 16) & 1023)
			r >>= 26
			var dist int
			switch {
			case sel < m.rep:
				dist = c.last
			case sel < m.rep+m.far && i > 64<<10:
				// Far copies are of whole structures, longer.
				dist = 32<<10 + int(r%uint64(i-32<<10))
				n = min(n+16, len(b)-i)
			default:
				dist = 1 + int(r%uint64(m.nearDist))
			}
			dist = min(dist, i)
			c.last = dist
			from := i - dist
			for j := range n {
				b[i+j] = b[from+j]
			}
			i += n
		}
	}
	c.buf = b
}
