# warren: `make demo` shows it working end to end, `make test` runs every test.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X github.com/warren-hq/warren/agent/buildinfo.Version=$(VERSION) \
           -X github.com/warren-hq/warren/agent/buildinfo.Commit=$(COMMIT)

.PHONY: build test demo bench cluster-test clean

build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/warren .

test:
	bash .ci/run

demo: build
	bash examples/demo.sh

bench: build
	go test -run '^$$' -bench . -benchtime 1x -timeout 30m ./agent/bench/

# Three RabbitMQ nodes on 127.0.0.1:5681-5683 (the default node is left
# alone), two warren processes, kill -9 of nodes and of a warren mid-stream.
cluster-test: build
	bash .ci/cluster-test.sh

clean:
	rm -rf bin
