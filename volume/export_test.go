package volume

// SetResizeHook sets the function [Manager.Resize] calls after each of its steps ("extended",
// "recorded"); an error it returns stops the resize there, as a crash would. nil removes it.
func SetResizeHook(m *Manager, fn func(step string) error) { m.testOnlyResizeStep = fn }

// ImageFd returns the file descriptor of an open volume's image.
func ImageFd(v *Volume) uintptr { return v.f.Fd() }
