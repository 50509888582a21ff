package engine

import (
	"context"
	"sync"
	"time"
)

// attempts runs the attempts of every subscription on goroutines that live
// on while there is work. An attempt grows its goroutine's stack to tens
// of kilobytes (HTTP, JSON, signing); a new goroutine per delivery paid
// for growing it every time. A goroutine idle for 5 s ends, so an
// idle subscription still costs no worker.
var attempts = &workers{tasks: make(chan func()), idle: 5 * time.Second}

type workers struct {
	tasks chan func()
	idle  time.Duration
}

// run starts f on an idle worker, or on a new one when none is idle.
func (w *workers) run(f func()) {
	select {
	case w.tasks <- f:
	default:
		go w.work(f)
	}
}

func (w *workers) work(f func()) {
	idle := time.NewTimer(w.idle)
	defer idle.Stop()
	for {
		f()
		f = nil // an idle worker must not keep the last message alive
		idle.Reset(w.idle)
		select {
		case f = <-w.tasks:
		case <-idle.C:
			return
		}
	}
}

// declarer runs the subscriptions' declares on a few goroutines of its
// own: thousands of subscriptions starting together would otherwise queue
// thousands of synchronous declares on the broker, and each subscription's
// long-lived goroutine would keep the deep stack a declare grows.
var declarer = newPool(32)

// pool runs functions on a fixed set of goroutines, started on first use.
type pool struct {
	work  chan func()
	start sync.Once
	n     int
}

func newPool(n int) *pool { return &pool{work: make(chan func()), n: n} }

// do runs f on one of the pool's goroutines and returns its error, or
// ctx's if ctx ends first.
func (p *pool) do(ctx context.Context, f func() error) error {
	p.start.Do(func() {
		for range p.n {
			go func() {
				for job := range p.work {
					job()
				}
			}()
		}
	})
	done := make(chan error, 1)
	select {
	case p.work <- func() { done <- f() }:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-done
}
