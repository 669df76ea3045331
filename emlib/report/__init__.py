"""Records, figures, running notebooks under papermill and the HTML report; reads records, never runs findings."""
