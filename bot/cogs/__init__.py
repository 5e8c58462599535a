"""One cog per user-facing feature; each module ends with `async def setup(bot)`."""
