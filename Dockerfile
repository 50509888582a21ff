# Static warren binary on an empty image: CA certificates, non-root user.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/warren-hq/warren/agent/buildinfo.Version=${VERSION} -X github.com/warren-hq/warren/agent/buildinfo.Commit=${COMMIT}" \
      -o /out/warren . \
 && echo 'warren:x:65532:65532:warren:/:/sbin/nologin' > /out/passwd

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/warren /usr/local/bin/warren
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["warren"]
CMD ["run", "-c", "/etc/warren/warren.yaml"]
