"""Package data: the built-in questions, prompt sets, trait declarations and the shipped vectors."""
