package engine

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

func TestParallel(t *testing.T) {
	t.Parallel()
	t.Run("one job runs the indexes in the order given", func(t *testing.T) {
		var got []int
		err := parallel(context.Background(), []int{3, 0, 2, 1}, 1, func(_ context.Context, i int) error {
			got = append(got, i)
			return nil
		})
		if err != nil || !slices.Equal(got, []int{3, 0, 2, 1}) {
			t.Errorf("ran %v, %v; want [3 0 2 1], nil", got, err)
		}
	})

	t.Run("no more than jobs run at once, and every index runs once", func(t *testing.T) {
		var running, peak atomic.Int32
		var mu sync.Mutex
		seen := map[int]int{}
		order := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
		err := parallel(context.Background(), order, 3, func(_ context.Context, i int) error {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			mu.Lock()
			seen[i]++
			mu.Unlock()
			return nil
		})
		if err != nil || peak.Load() > 3 || len(seen) != len(order) {
			t.Errorf("err %v, peak %d, ran %v", err, peak.Load(), seen)
		}
		for i, n := range seen {
			if n != 1 {
				t.Errorf("index %d ran %d times", i, n)
			}
		}
	})

	t.Run("the first error stops what has not started and is returned", func(t *testing.T) {
		bad := errors.New("layer 1 refused")
		var ran []int
		err := parallel(context.Background(), []int{0, 1, 2, 3}, 1, func(ctx context.Context, i int) error {
			ran = append(ran, i)
			if i == 1 {
				return bad
			}
			return nil
		})
		if !errors.Is(err, bad) || !slices.Equal(ran, []int{0, 1}) {
			t.Errorf("ran %v, %v; want [0 1], %v", ran, err, bad)
		}
	})

	t.Run("a running job sees the others' error as its context's cause", func(t *testing.T) {
		bad := errors.New("layer 0 refused")
		started := make(chan struct{})
		var cause error
		err := parallel(context.Background(), []int{0, 1}, 2, func(ctx context.Context, i int) error {
			if i == 0 {
				<-started
				return bad
			}
			close(started)
			<-ctx.Done()
			cause = context.Cause(ctx)
			return ctx.Err()
		})
		if !errors.Is(err, bad) || !errors.Is(cause, bad) {
			t.Errorf("returned %v, job saw %v; want %v", err, cause, bad)
		}
	})

	t.Run("nothing to run is no error", func(t *testing.T) {
		if err := parallel(context.Background(), nil, 4, nil); err != nil {
			t.Error(err)
		}
	})
}

func TestLargestFirst(t *testing.T) {
	t.Parallel()
	layers := []source.Layer{{Size: 30}, {Size: 20}, {Size: 500}, {Size: 20}, {Size: 140}}
	if got := largestFirst(layers); !slices.Equal(got, []int{2, 4, 0, 1, 3}) {
		t.Errorf("order %v, want [2 4 0 1 3]", got)
	}
}

func TestLayerJobs(t *testing.T) {
	t.Parallel()
	if n := layerJobs(); n < 2 || n > maxLayerJobs {
		t.Errorf("layerJobs() = %d, want 2 to %d", n, maxLayerJobs)
	}
}

func TestBudget(t *testing.T) {
	t.Parallel()
	t.Run("takes what is free and waits for the rest", func(t *testing.T) {
		b := newBudget(10)
		got, err := b.acquire(context.Background(), 6)
		if err != nil || got != 6 {
			t.Fatalf("acquire 6: %d, %v", got, err)
		}
		done := make(chan int64)
		go func() {
			n, _ := b.acquire(context.Background(), 8)
			done <- n
		}()
		select {
		case n := <-done:
			t.Fatalf("acquired %d while only 4 were free", n)
		default:
		}
		b.release(got)
		if n := <-done; n != 8 {
			t.Errorf("acquired %d, want 8", n)
		}
	})

	t.Run("more than the whole budget takes the whole budget", func(t *testing.T) {
		b := newBudget(10)
		if n, err := b.acquire(context.Background(), 1<<40); err != nil || n != 10 {
			t.Errorf("acquire: %d, %v; want 10, nil", n, err)
		}
	})

	t.Run("waiting ends with the context", func(t *testing.T) {
		b := newBudget(10)
		if _, err := b.acquire(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancelCause(context.Background())
		stop := errors.New("interrupted")
		cancel(stop)
		if _, err := b.acquire(ctx, 1); !errors.Is(err, stop) {
			t.Errorf("error %v, want %v", err, stop)
		}
	})
}
