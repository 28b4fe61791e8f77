"""Files the wheel carries: the companion must-use plugin, the example configuration and the
systemd unit (symbolic links to the sources in the repository; the build copies their contents)."""
