"""One cog per command area; ``bot.app.COGS`` lists the extensions loaded at start-up."""
