"""What every command shares: the error types and exit codes, file reading and atomic writing, recipe loading."""
