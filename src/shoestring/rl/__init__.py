"""shoestring.rl"""
