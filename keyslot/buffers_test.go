package keyslot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBuffersShared: Images sharing one Buffers, used one after another and at once, keep
// their own metadata: nothing an Image keeps lives in a lent buffer that another reuses.
func TestBuffersShared(t *testing.T) {
	t.Parallel()
	bufs := &Buffers{}
	const n = 4
	devs := make([]*memDevice, n)
	imgs := make([]*Image, n)
	for i := range n {
		dev, img, _ := newMemImage(t, "p")
		_, err := img.AddToken(0, fmt.Appendf(nil, `{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"%d"}`, i))
		require.NoError(t, err)
		devs[i] = dev
		imgs[i], err = Open(dev, &Options{Buffers: bufs})
		require.NoError(t, err)
	}
	// Each Image still has its own text after the others were opened through the same
	// buffers.
	for i, img := range imgs {
		onDisk, err := jsonText(devs[i].buf[binHeaderSize:DefaultMetadataSize])
		require.NoError(t, err)
		require.Equal(t, onDisk, img.snapshot().text, "image %d", i)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for round := range 20 {
				err := imgs[i].UpdateTokenContext(context.Background(), 0, func(json.RawMessage) ([]byte, error) {
					return fmt.Appendf(nil, `{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"%d-%d"}`, i, round), nil
				})
				assert.NoError(t, err)
				again, err := Open(devs[i], &Options{Buffers: bufs})
				if !assert.NoError(t, err) {
					continue
				}
				_, err = Open(devs[(i+1)%n], &Options{Buffers: bufs})
				assert.NoError(t, err)
				assert.Equal(t, imgs[i].snapshot().text, again.snapshot().text)
			}
		})
	}
	wg.Wait()
	for i, img := range imgs {
		want := fmt.Appendf(nil, `{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"%d-19"}`, i)
		tok, err := img.Token(0)
		require.NoError(t, err)
		assert.JSONEq(t, string(want), string(tok), "image %d", i)
		text := img.snapshot().text
		onDisk, err := jsonText(devs[i].buf[binHeaderSize:DefaultMetadataSize])
		require.NoError(t, err)
		assert.True(t, bytes.Equal(text, onDisk), "image %d keeps the text it wrote", i)
		require.NoError(t, img.Reload())
		assert.True(t, img.Health().OK(), "image %d", i)
		assert.True(t, bytes.Equal(text, img.snapshot().text), "image %d", i)
	}
}
