package store

import (
	"context"
	"encoding/json"
	"fmt"
)

// Item is one JSON record read by ListJSON.
type Item[T any] struct {
	Key   string
	Value T
	Rev   int64 // the key's modification revision
}

// GetJSON reads key and decodes its JSON value into v. It returns the key's
// modification revision, or ErrNotFound.
func GetJSON(ctx context.Context, s Store, key string, v any) (int64, error) {
	kv, err := s.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return 0, fmt.Errorf("decode %q: %w", key, err)
	}
	return kv.Revision, nil
}

// PutJSON encodes v as JSON and writes it at key if the key's revision is
// expectRev (see Store.Put). It returns the new revision.
func PutJSON(ctx context.Context, s Store, key string, v any, expectRev int64) (int64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %q: %w", key, err)
	}
	return s.Put(ctx, key, b, expectRev)
}

// ListJSON lists the keys under prefix and decodes each value as a T. It
// returns the records sorted by key and the store revision they were read at
// (watch from rev+1 to follow changes).
func ListJSON[T any](ctx context.Context, s Store, prefix string) ([]Item[T], int64, error) {
	kvs, rev, err := s.List(ctx, prefix)
	if err != nil {
		return nil, 0, err
	}
	items := make([]Item[T], len(kvs))
	for i, kv := range kvs {
		if err := json.Unmarshal(kv.Value, &items[i].Value); err != nil {
			return nil, 0, fmt.Errorf("decode %q: %w", kv.Key, err)
		}
		items[i].Key = kv.Key
		items[i].Rev = kv.Revision
	}
	return items, rev, nil
}
