# See winrm.rb: a stand-in, for vagrant validate only.
require "winrm"
