package etcdembed

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"

	"go.uber.org/zap/zapcore"
)

// slogCore is a zapcore.Core that forwards etcd's zap records to a
// slog.Handler, so etcd logs end up wherever the rest of Hangar logs.
//
// etcd's embed package logs "setting up serving from embedded etcd failed."
// at error level for every listener it closes during a normal shutdown; once
// closing is set, those records are demoted to debug.
type slogCore struct {
	h       slog.Handler
	level   zapcore.LevelEnabler
	closing *atomic.Bool
}

// shutdownNoise is the message etcd logs at error level when its own
// listeners are closed by Close.
const shutdownNoise = "setting up serving from embedded etcd failed."

func newSlogCore(h slog.Handler, level zapcore.LevelEnabler, closing *atomic.Bool) *slogCore {
	return &slogCore{h: h, level: level, closing: closing}
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return c.level.Enabled(l) }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	if len(fields) == 0 {
		return c
	}
	return &slogCore{h: c.h.WithAttrs(fieldsToAttrs(fields)), level: c.level, closing: c.closing}
}

func (c *slogCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if ent.Level > zapcore.DebugLevel && ent.Message == shutdownNoise && c.closing.Load() {
		ent.Level = zapcore.DebugLevel
	}
	if !c.Enabled(ent.Level) || !c.h.Enabled(context.Background(), slogLevel(ent.Level)) {
		return ce
	}
	return ce.AddCore(ent, c)
}

func (c *slogCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	rec := slog.NewRecord(ent.Time, slogLevel(ent.Level), ent.Message, 0)
	if ent.LoggerName != "" {
		rec.AddAttrs(slog.String("logger", ent.LoggerName))
	}
	if ent.Caller.Defined {
		rec.AddAttrs(slog.String("caller", ent.Caller.TrimmedPath()))
	}
	rec.AddAttrs(fieldsToAttrs(fields)...)
	return c.h.Handle(context.Background(), rec)
}

func (c *slogCore) Sync() error { return nil }

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// fieldsToAttrs renders zap fields through a map encoder and returns them as
// slog attributes in key order.
func fieldsToAttrs(fields []zapcore.Field) []slog.Attr {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	return attrs
}
