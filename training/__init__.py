"""sitewatch training: labels to chips to a trained, versioned checkpoint."""
