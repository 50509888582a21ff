# Static warren binary on an empty image: CA certificates, non-root user.
#
#   docker build -t warren .
#       compiles in the golang stage (needs the golang base image);
#   make build && docker build --build-arg BINARY=prebuilt -t warren .
#       takes bin/warren and bin/ca-certificates.crt from the context
#       instead (`make image` does this, with podman, and needs no base image).
#
# Either way the runtime image is the last stage below.
ARG BINARY=build

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY main.go ./
COPY agent agent
COPY config config
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/warren-hq/warren/agent/buildinfo.Version=${VERSION} -X github.com/warren-hq/warren/agent/buildinfo.Commit=${COMMIT}" \
      -o /out/warren . \
 && cp /etc/ssl/certs/ca-certificates.crt /out/

FROM scratch AS prebuilt
COPY bin/warren bin/ca-certificates.crt /out/

FROM ${BINARY} AS binary

FROM scratch
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/warren /usr/local/bin/warren
ENV PATH=/usr/local/bin
# Numeric, so Kubernetes runAsNonRoot can check it without an /etc/passwd.
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["warren"]
CMD ["run", "-c", "/etc/warren/warren.yaml"]
