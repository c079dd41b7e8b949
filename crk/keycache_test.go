package crk

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var timeType = reflect.TypeFor[time.Time]()

// fillAll sets every field reachable from v (a settable value) to something non-zero: slices get
// one element, pointers a value.
func fillAll(v reflect.Value) {
	if v.Type() == timeType {
		v.Set(reflect.ValueOf(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fillAll(v.Elem())
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fillAll(v.Index(0))
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fillAll(k)
		fillAll(e)
		v.SetMapIndex(k, e)
	case reflect.Struct:
		for i := range v.NumField() {
			fillAll(v.Field(i))
		}
	default:
		panic(fmt.Sprintf("fillAll: a field of kind %s: teach fillAll and keyRecord.clone about it", v.Kind()))
	}
}

// sharedMemory returns the paths below a and b (values of one type) where both refer to the same
// memory: a slice, pointer or map not copied.
func sharedMemory(path string, a, b reflect.Value) []string {
	if a.Type() == timeType {
		return nil // immutable; its location is meant to be shared
	}
	var out []string
	switch a.Kind() {
	case reflect.Pointer, reflect.Map:
		if !a.IsNil() && a.UnsafePointer() == b.UnsafePointer() {
			out = append(out, path)
		}
		if a.Kind() == reflect.Pointer && !a.IsNil() && !b.IsNil() {
			out = append(out, sharedMemory(path, a.Elem(), b.Elem())...)
		}
	case reflect.Slice:
		if a.Len() > 0 && a.UnsafePointer() == b.UnsafePointer() {
			out = append(out, path)
		}
		for i := range min(a.Len(), b.Len()) {
			out = append(out, sharedMemory(fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i))...)
		}
	case reflect.Struct:
		for i := range a.NumField() {
			out = append(out, sharedMemory(path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i))...)
		}
	}
	return out
}

// TestKeyRecordClone: a clone equals its record and shares no memory with it, whatever
// fields keyRecord has (a field added later that clone does not copy fails here).
func TestKeyRecordClone(t *testing.T) {
	var r keyRecord
	fillAll(reflect.ValueOf(&r).Elem())
	c := r.clone()
	assert.Equal(t, &r, c)
	assert.Empty(t, sharedMemory("keyRecord", reflect.ValueOf(&r).Elem(), reflect.ValueOf(c).Elem()))
}

// TestKeyCache: a record read again from the same bytes is a copy of the cached one (changing
// it changes nothing cached); other bytes under the same id are decoded afresh; the cache
// keeps at most keyCacheSize records.
func TestKeyCache(t *testing.T) {
	var r keyRecord
	fillAll(reflect.ValueOf(&r).Elem())
	r.ID = "k1"
	raw, err := json.Marshal(&r)
	require.NoError(t, err)
	var c keyCache
	first, err := c.decode("k1", raw)
	require.NoError(t, err)
	first.Name = "changed"
	first.Versions[0].Material[0] ^= 0xff
	second, err := c.decode("k1", raw)
	require.NoError(t, err)
	assert.Equal(t, "x", second.Name, "the caller's changes do not reach the cache")
	assert.Equal(t, r.Versions[0].Material, second.Versions[0].Material)

	r.Name = "renamed"
	raw2, err := json.Marshal(&r)
	require.NoError(t, err)
	third, err := c.decode("k1", raw2)
	require.NoError(t, err)
	assert.Equal(t, "renamed", third.Name, "new bytes are decoded")

	_, err = c.decode("k2", []byte("{"))
	assert.Error(t, err)
	for i := range keyCacheSize + 10 {
		r.ID = fmt.Sprint("id-", i)
		raw, err := json.Marshal(&r)
		require.NoError(t, err)
		_, err = c.decode(r.ID, raw)
		require.NoError(t, err)
	}
	assert.Len(t, c.m, keyCacheSize)
}
