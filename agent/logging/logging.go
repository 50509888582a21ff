// Package logging chooses warren's log handler in one place: coloured text
// via tint on a terminal, JSON otherwise.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
	"golang.org/x/term"
)

// Formats accepted by --log-format.
const (
	FormatAuto = "auto"
	FormatText = "text"
	FormatJSON = "json"
)

// New returns a logger writing to w in the given format and level.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid log level %q (want debug, info, warn or error)", level)
	}
	switch strings.ToLower(format) {
	case FormatAuto:
		if isTerminal(w) {
			return slog.New(tintHandler(w, lvl, false)), nil
		}
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl})), nil
	case FormatText:
		return slog.New(tintHandler(w, lvl, !isTerminal(w))), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl})), nil
	}
	return nil, fmt.Errorf("invalid log format %q (want auto, text or json)", format)
}

func tintHandler(w io.Writer, lvl slog.Level, noColor bool) slog.Handler {
	return tint.NewHandler(w, &tint.Options{Level: lvl, TimeFormat: time.TimeOnly, NoColor: noColor})
}

func isTerminal(w io.Writer) bool {
	if b, ok := w.(*Buffer); ok {
		w = b.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Err is the attribute errors are logged under.
func Err(err error) slog.Attr {
	return slog.Any("err", err)
}
