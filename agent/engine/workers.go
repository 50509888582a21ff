package engine

import "time"

// attempts runs the attempts of every subscription on goroutines that live
// on while there is work. An attempt grows its goroutine's stack to tens
// of kilobytes (HTTP, JSON, signing); a new goroutine per delivery paid
// for growing it every time. A goroutine idle for idleWorker ends, so an
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
