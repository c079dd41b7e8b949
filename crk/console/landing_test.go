package console

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLandsOnFirstInstance: an API key lists its instances in its own order; the console
// lands on the first one, even when the default instance comes later, and the switcher
// offers them in that order.
func TestLandsOnFirstInstance(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	key, err := f.tenants.CreateAPIKey(f.other, f.inst)
	require.NoError(t, err)
	c := f.client()
	resp, _ := f.signIn(c, key)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = f.get(c, "/ui/")
	assert.Equal(t, "/ui/i/"+f.other+"/keys", resp.Header.Get("Location"), "the key's first instance, team-b")
	_, body := f.follow(c, resp)
	other := `<option value="` + f.other + `"`
	def := `<option value="` + f.inst + `"`
	require.Contains(t, body, other)
	require.Contains(t, body, def)
	assert.Less(t, strings.Index(body, other), strings.Index(body, def), "the switcher keeps the key's order")
}
