"""Views of a watch session: line mode (plain or JSON) and the Textual TUI."""
