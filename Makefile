# warren: `make demo` shows it working end to end, `make test` runs every test.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE   ?= warren:latest
LDFLAGS := -s -w -X github.com/warren-hq/warren/agent/buildinfo.Version=$(VERSION) \
           -X github.com/warren-hq/warren/agent/buildinfo.Commit=$(COMMIT)

.PHONY: build test demo bench bench-scale cluster-test image image-test clean

build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/warren .

test:
	bash .ci/run

demo: build
	bash examples/demo.sh

# Fails when warren misses a goal of SPEC §15; see agent/bench/README.md.
bench: build
	go test -run '^$$' -bench 'BridgeComparison|JournalDrain|CopyHeaders' -benchtime 1x -timeout 30m ./agent/bench/

# Cost per subscription (goroutines, channels, queues, memory) as the number
# of subscriptions grows: benchmarks named Scale*.
bench-scale: build
	go test -run '^$$' -bench Scale -benchtime 1x -timeout 30m ./agent/bench/

# The runtime image (podman, from bin/warren): IMAGE=warren:latest by default.
image: build
	bash .ci/image.sh $(IMAGE)

# Build the image and run it beside the local broker: user, config mount,
# /readyz, one delivery, podman stop.
image-test: build
	bash .ci/image-test.sh

# Three RabbitMQ nodes on 127.0.0.1:5681-5683 (the default node is left
# alone), two warren processes, kill -9 of nodes and of a warren mid-stream.
cluster-test: build
	bash .ci/cluster-test.sh

clean:
	rm -rf bin
