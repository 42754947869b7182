/* Edit this and save: `fbuild watch` rebuilds, flashes the sectors that
   changed and the new version appears in the log pane. */
#define APP_VERSION "1.0.0"
