package volume

// SetResizeHook sets the function [Manager.Resize] calls after each of its steps ("extended",
// "recorded"); an error it returns stops the resize there, as a crash would. nil removes it.
func SetResizeHook(m *Manager, fn func(step string) error) { m.testOnlyResizeStep = fn }

// ImageFd returns the file descriptor of an open volume's image.
func ImageFd(v *Volume) uintptr { return v.f.Fd() }

// AddImage stores e in the catalog of m's registry as a new image, as ImportImage does after
// its checks (tests of the catalog and of rotation use it to make many entries quickly).
func AddImage(m *Manager, e ImageEntry) error { return m.reg.addImage(e) }
