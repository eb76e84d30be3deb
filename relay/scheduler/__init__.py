"""The clock (APScheduler ticks), the re-polls it feeds through Attesto, and their rate limit."""
