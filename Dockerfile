# Static warren binary on an empty image: CA certificates, non-root user.
#
#   docker build -t warren .
#       compiles warren in the golang stage;
#   make image   (podman build --build-arg BINARY=prebuilt ...)
#       takes bin/warren (make build) and bin/ca-certificates.crt (the host's
#       bundle) from the context instead, and pulls no base image.
#
# Either way the runtime image is the last stage below. podman 4.3 (buildah
# 1.28) skips the golang stage unless BINARY is given: add
# --build-arg BINARY=build there.
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
