// Package buildinfo reports what binary is running: set by -ldflags -X at
// release, read from the Go build info otherwise.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Set at link time: -X github.com/warren-hq/warren/agent/buildinfo.Version=v1.2.3
var (
	Version = ""
	Commit  = ""
)

// Info describes the running binary.
type Info struct {
	Version   string
	Commit    string
	GoVersion string
}

// Get returns the build information, filling gaps from debug.ReadBuildInfo.
func Get() Info {
	info := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && info.Commit == "" {
				info.Commit = s.Value
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// UserAgent is the user-agent header of every webhook request.
func UserAgent() string {
	return "warren/" + Get().Version
}
