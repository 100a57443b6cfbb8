"""The users service: shop customer accounts with unique, normalised email addresses."""
