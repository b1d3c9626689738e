// Package errdefs classifies errors once, where their meaning is known, and
// maps the classes to API error codes at the edge.
package errdefs

import (
	"context"
	"errors"
	"fmt"

	v1 "hangar/api/v1"
	"hangar/internal/imports"
	"hangar/internal/scheduler"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Classes that are not owned by a more specific package.
var (
	ErrPrecondition = errors.New("failed precondition")
	ErrConflict     = errors.New("conflict")
	ErrNotFound     = errors.New("not found")
	ErrUnavailable  = errors.New("unavailable")
	ErrInvalid      = errors.New("invalid argument")
	// ErrUnauthenticated: the request carries no credential the server
	// accepts (HTTP 401).
	ErrUnauthenticated = errors.New("unauthenticated")
)

// Precondition returns an error that matches ErrPrecondition and whose
// message is only the one given (no ": failed precondition" tail).
func Precondition(format string, args ...any) error {
	return &preconditionError{msg: fmt.Sprintf(format, args...)}
}

type preconditionError struct{ msg string }

func (e *preconditionError) Error() string        { return e.msg }
func (e *preconditionError) Is(target error) bool { return target == ErrPrecondition }

// FieldError marks err as the fault of one request field.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Field wraps err with the request field it is about.
func Field(field string, err error) error { return &FieldError{Field: field, Err: err} }

// Placement classifies a scheduler's refusal: a malformed request is
// invalid, a shortage of capacity (scheduler.ShortError) a failed
// precondition naming the resource, anything else (no live host reaching
// the pools…) unavailable.
func Placement(err error) error {
	var short *scheduler.ShortError
	switch {
	case errors.Is(err, scheduler.ErrInvalid):
		return fmt.Errorf("%w: %w", err, ErrInvalid)
	case errors.As(err, &short):
		return err
	default:
		return fmt.Errorf("%w: %w", err, ErrUnavailable)
	}
}

// ToAPI maps an error to the API's error body.
func ToAPI(err error) *v1.Error {
	if err == nil {
		return nil
	}
	var ae *v1.Error
	if errors.As(err, &ae) {
		c := *ae
		return &c
	}
	e := &v1.Error{Code: Code(err), Message: err.Error()}
	var fe *vm.FieldError
	var fe2 *FieldError
	var short *scheduler.ShortError
	switch {
	case errors.As(err, &fe):
		e.Field = fe.Field
	case errors.As(err, &fe2):
		e.Field = fe2.Field
	case errors.As(err, &short):
		e.Field = short.Field
	}
	return e
}

// Code returns the API error code of err.
func Code(err error) string {
	var ae *v1.Error
	var se *vm.StateError
	var short *scheduler.ShortError
	switch {
	case errors.As(err, &ae):
		return ae.Code
	case errors.As(err, &se), errors.As(err, &short):
		return v1.CodeFailedPrecondition
	case errors.Is(err, vm.ErrInvalid), errors.Is(err, ErrInvalid), errors.Is(err, storage.ErrNoImage),
		errors.Is(err, storage.ErrOutsidePool), errors.Is(err, storage.ErrInvalid), errors.Is(err, storage.ErrChecksum),
		errors.Is(err, imports.ErrMalformed):
		return v1.CodeInvalidArgument
	case errors.Is(err, store.ErrNotFound), errors.Is(err, ErrNotFound), errors.Is(err, storage.ErrNotFound):
		return v1.CodeNotFound
	case errors.Is(err, store.ErrConflict), errors.Is(err, ErrConflict), errors.Is(err, storage.ErrExists), errors.Is(err, storage.ErrInUse):
		return v1.CodeConflict
	case errors.Is(err, ErrPrecondition), errors.Is(err, storage.ErrChainTooDeep):
		return v1.CodeFailedPrecondition
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return v1.CodeUnavailable
	case errors.Is(err, ErrUnauthenticated):
		return v1.CodeUnauthenticated
	default:
		return v1.CodeInternal
	}
}

// HTTPStatus maps an API error code to its HTTP status.
func HTTPStatus(code string) int {
	switch code {
	case v1.CodeInvalidArgument:
		return 400
	case v1.CodeUnauthenticated:
		return 401
	case v1.CodeNotFound:
		return 404
	case v1.CodeConflict:
		return 409
	case v1.CodeFailedPrecondition:
		return 412
	case v1.CodePermissionDenied:
		return 403
	case v1.CodeMethodNotAllowed:
		return 405
	case v1.CodeTooLarge:
		return 413
	case v1.CodeUnsupportedMediaType:
		return 415
	case v1.CodeTooManyRequests:
		return 429
	case v1.CodeUnavailable:
		return 503
	default:
		return 500
	}
}
