"""Model classes. Importing this package registers the shoestring GPT with the Auto classes."""
